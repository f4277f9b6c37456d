"""scdl_monai.methods"""
