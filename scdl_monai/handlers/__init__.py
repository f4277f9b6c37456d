"""scdl_monai.handlers"""
