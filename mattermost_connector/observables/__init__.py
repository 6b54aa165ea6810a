"""Indicators of compromise in chat messages (opt-in: MATTERMOST_EXTRACT_OBSERVABLES).

Only this constant lives here: the bundle planner needs it without importing the extractor.
"""

# What one post's indicators may add to its bundle, objects and links together (about 350
# indicators): observables_of stops there, and a thread root keeps this much more room.
MAX_BYTES_PER_POST = 256 * 1024
