"""Dataset preparation. Each folder holds one dataset's prepare.py; common.py is what they share."""
