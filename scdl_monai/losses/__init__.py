"""scdl_monai.losses"""
