"""One channel's pipeline as plain Python, for any driver (the scheduled sync's flow, a flow
run per channel on another worker, a live session), organised by pass:

- services: what a run works with (`Services`), handed in by its driver;
- lifecycle: a run opened and closed; lease: the channel's lease; spool: its files on disk;
- new_posts: read, files, bundles; loading: delivered, recorded, the cursor moved;
- changed_posts: edits, deletions, missing files, posts behind the cursor;
- ordered: the ordered-delivery invariant; positions: the cursor each bundle carries;
- steps: the one table of steps (`STEPS`) and `plain_steps`; run: `run_channel` over them.

Prefect tasks (tasks/steps.py) are built from the same table; flows/ only orchestrate.
"""
