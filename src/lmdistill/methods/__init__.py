"""lmdistill.methods"""
