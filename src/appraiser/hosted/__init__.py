"""Hosted fine-tuning: the course's OpenAI path (chat JSONL, upload, a fine-tuning job, its live events),
driven by one client that works the same against OpenAI and against `appraiser serve`.

- `chat`: items → the course's chat examples ("Price is $X.00") and their train / validation files.
- `validate`: OpenAI's data-preparation checks on those files, token counts and the cost estimate.
- `jobs`: upload, create the job, record it in the run store as a `hosted` run; cancel; checkpoints.
- `follow`: mirror a job's events and metrics into the run store (and trackers) as they appear.
"""
