"""lmdistill.tasks"""
