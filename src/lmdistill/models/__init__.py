"""lmdistill.models"""
