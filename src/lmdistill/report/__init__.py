"""lmdistill.report"""
