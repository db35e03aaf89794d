"""apache"""
