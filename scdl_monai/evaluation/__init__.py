"""scdl_monai.evaluation"""
