"""scdl_monai.networks"""
