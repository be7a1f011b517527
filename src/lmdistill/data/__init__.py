"""lmdistill.data"""
