"""The chat page in Chromium: `python -m benchmarks.web` prints JSON (about half a minute).

Against an in-process `aigw dev` (Bedrock emulator at zero latency), in Debian's Chromium driven by Playwright,
as `tests/browser` runs it:
- `page_weight`: the bytes of `web/`, raw and gzipped (what a first visit downloads besides `config.json`);
- `load`: navigation -> the sign-in form has the focus (config fetched, modules parsed), fresh context each;
- `sign_in`: Enter on the password -> "Connected" (Cognito InitiateAuth on moto, WebSocket connect + ack);
- `first_text` / `done`: the Enter that sends a question -> the answer's first text in the DOM / its end,
  timed inside the page with `performance.now()` (a capture listener on the key, a MutationObserver on the
  answer), so the driver's own round trips are not counted. As in `benchmarks.gateway`, a fresh user signs in
  every 10 questions (a user's metering item keeps an entry per admission for the lease period, and its size
  shows in every admit), which also keeps each conversation's history (sent with every request) short.
Chromium, the gateway and moto share the machine's cores, so these figures include that contention.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import platform
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import boto3

from aigw.dev import Ports, running
from aigw.local_cognito import add_user, generate_password
from benchmarks.gateway import CountingSink, summary
from components.settings import StackSettings

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# Installed before each question: when Enter goes down, and when the newest answer first has text / ends.
TIMING_PROBE = """() => {
    const t = window.__timing = {enter: null, first: null, done: null};
    document.getElementById('prompt').addEventListener('keydown', (e) => {
        if (e.key === 'Enter' && !e.shiftKey && t.enter === null) t.enter = performance.now();
    }, {capture: true, once: true});
    const before = document.querySelectorAll('#messages .message.assistant').length;
    const observer = new MutationObserver(() => {
        const answers = document.querySelectorAll('#messages .message.assistant');
        if (answers.length <= before) return;
        const answer = answers[answers.length - 1];
        if (t.first === null && answer.querySelector('.text').textContent) t.first = performance.now();
        const meta = answer.querySelector('.meta').textContent;
        if (t.done === null && meta && !meta.includes('answering')) {
            t.done = performance.now();
            observer.disconnect();
        }
    });
    observer.observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
}"""


def page_weight() -> dict[str, int]:
    files = [p for p in sorted((ROOT / "web").iterdir()) if p.is_file() and not p.name.startswith(".")]
    raw = b"".join(p.read_bytes() for p in files)
    return {"files": len(files), "bytes": len(raw), "gzip_bytes": sum(len(gzip.compress(p.read_bytes(), 9))
                                                                      for p in files)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.web", description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--loads", type=int, default=20)
    parser.add_argument("--chromium", default=os.environ.get("AIGW_CHROMIUM") or shutil.which("chromium"))
    args = parser.parse_args()
    if not args.chromium:
        raise SystemExit("no chromium: install Debian's package (apt-get install chromium) or pass --chromium")
    from playwright.sync_api import sync_playwright

    settings = StackSettings.from_stack_file(ROOT / "Pulumi.dev.yaml")
    logs = CountingSink()  # the runtime's log lines and EMF, kept off stdout (which carries the report)
    with contextlib.redirect_stdout(logs), running(
        settings, ports=Ports(0, 0, 0, 0), stack=f"webbench{uuid.uuid4().hex[:6]}", pacing_s=0.0, seed_user=False,
        analytics_dir=None,
    ) as gw, sync_playwright() as p:
        c = gw.info["cognito"]
        idp = boto3.client("cognito-idp", region_name=gw.info["region"], endpoint_url=c["endpoint"])
        pool = gw.pool

        def new_user() -> tuple[str, str]:
            email, password = f"bench-{uuid.uuid4().hex[:8]}@example.com", generate_password()
            add_user(idp, pool, email, password, tier="pro")
            return email, password

        def sign_in(page: Any, email: str, password: str) -> float:
            page.fill("#username", email)
            page.fill("#password", password)
            start = time.perf_counter()
            page.press("#password", "Enter")
            page.get_by_text("Connected").wait_for()
            return time.perf_counter() - start

        browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        url = gw.info["web"]

        loads = []
        for _ in range(args.loads):
            context = browser.new_context()
            page = context.new_page()
            start = time.perf_counter()
            page.goto(url)
            page.wait_for_selector("#username:focus")
            loads.append(time.perf_counter() - start)
            context.close()

        page = browser.new_context().new_page()
        page.goto(url)
        sign_ins = []
        first, done = [], []
        for i in range(args.questions):
            if i % 10 == 0:
                if i:
                    page.click("#sign-out")
                sign_ins.append(sign_in(page, *new_user()))
            page.evaluate(TIMING_PROBE)
            page.fill("#prompt", f"Benchmark question {i}: what does the gateway meter?")
            page.press("#prompt", "Enter")
            page.locator("#messages .message.assistant").last.locator(".meta").filter(
                has_not_text="answering").wait_for()
            t = page.evaluate("window.__timing")
            first.append((t["first"] - t["enter"]) / 1000)
            done.append((t["done"] - t["enter"]) / 1000)
        browser.close()

    print(json.dumps({
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "chromium": args.chromium},
        "page_weight": page_weight(),
        "load_ms": summary(loads),
        "sign_in_ms": summary(sign_ins),
        "questions": args.questions,
        "enter_to_first_text_ms": summary(first),
        "enter_to_done_ms": summary(done),
        "runtime_log_levels": dict(logs.levels),  # WARNING/ERROR lines during the run (none expected)
    }, indent=2))


if __name__ == "__main__":
    main()
