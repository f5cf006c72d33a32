"""``flm models rm`` and ``flm models pull`` (the job's event stream, shown as progress)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import urllib.parse
from collections.abc import Iterator
from time import sleep
from typing import Any

from flm.cli.client import AdminClient, CliError
from flm.cli.commands import emit
from flm.cli.progress import LineProgress, TtyProgress


def models_rm(client: AdminClient, args: argparse.Namespace) -> int:
    # The service refuses (409 model_in_use) while a running API uses the model.
    path = "/api/models/" + urllib.parse.quote(args.name, safe="")
    if args.force:
        path += "?force=true"
    emit(args, client.request("DELETE", path), lambda d, a: f"Deleted model {args.name}.")
    return 0


def models_pull(client: AdminClient, args: argparse.Namespace) -> int:
    started = client.request("POST", "/api/models/pull", body={"name": args.name}) or {}
    job = urllib.parse.quote(str(started.get("job")), safe="")
    view: TtyProgress | LineProgress = (
        TtyProgress(sys.stdout, terminal_width())
        if sys.stdout.isatty()
        else LineProgress(sys.stdout)
    )
    state: dict[str, Any] = {"status": "running"}
    try:
        for state in _pull_states(client, job):
            if args.json:
                print(json.dumps(state), flush=True)
            else:
                view.update(state)
    except KeyboardInterrupt:
        view.close()
        print(f"flm: stopped watching; the pull goes on in the background (job {job})",
              file=sys.stderr)  # fmt: skip
        return 130
    finally:
        view.close()  # end the bar's line before any error message
    if state.get("status") != "done":
        raise CliError(f"pull of {args.name} failed: {state.get('error') or 'unknown error'}")
    if not args.json:
        print(f"Pulled {args.name}.")
    return 0


def _pull_states(client: AdminClient, job: str) -> Iterator[dict[str, Any]]:
    """The job's states from its event stream; should the stream end early, by polling."""
    path = f"/api/models/pulls/{job}"
    for state in client.events(path + "/events"):
        yield state
        if state.get("status") != "running":
            return
    while True:
        state = client.request("GET", path)
        yield state
        if state.get("status") != "running":
            return
        sleep(1)


def terminal_width() -> int:
    return shutil.get_terminal_size((80, 24)).columns
