"""Notifications: a run's result card, sent through Apprise when it ends or stalls, exactly once.

- `send(urls, title, body, attachments=())`: any Apprise URL (`mailto://`, `json://`, `slack://`,
  `discord://`, `tgram://`, `ntfy://`, ...), retried with backoff, one `Delivery` per URL, never raises;
- `notify_run(store, run_id, urls, status=None)`: the result card of a run (status, duration, smoothed
  loss and verdict, best probe MAE against the leaderboard, model and how to use it, last error lines;
  the loss-curve PNG by email), sent once per (run, state, URL) across processes, resumes and restarts,
  and sent again after a restart when its sender died before delivering it (`claim_is_stale`);
- `RunNotifier(store, run_id, urls)`: a daemon thread that watches a run for terminal states and stalls.

URLs are shown with their secrets masked (`redact`: only scheme, host, port, user name and parameter names
stay readable): they often carry passwords and tokens, in the path and in headers too.
"""

from appraiser.notify.card import Card, build_card, loss_png
from appraiser.notify.run import NOTIFY_STATES, RunNotifier, claim_is_stale, notify_run, pending, run_state, url_key
from appraiser.notify.send import Delivery, check_url, redact, send

__all__ = [
    "NOTIFY_STATES",
    "Card",
    "Delivery",
    "RunNotifier",
    "build_card",
    "claim_is_stale",
    "check_url",
    "loss_png",
    "notify_run",
    "pending",
    "redact",
    "run_state",
    "send",
    "url_key",
]
