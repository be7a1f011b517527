"""lmdistill.signals"""
