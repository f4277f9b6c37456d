"""scdl_monai.engines"""
