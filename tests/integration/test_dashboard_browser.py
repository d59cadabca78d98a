"""The dashboard in a real browser (Debian's chromium, headless, through selenium and
the system chromedriver) against a real 3-node mesh under load.

It must list all three members, draw non-zero throughput, show a running task, and
show a node as dead within 15 s of its SIGKILL (with no load shown for it). The
screenshots land in $MESHLB_ARTIFACTS (else a temporary directory), printed.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.procs import Proc, alive_ids, meshlb_node, sim_ollama, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MODEL = "llama3.2:1b"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
webdriver: Any
try:
    from selenium import webdriver
    from selenium.webdriver.common.by import By
except ImportError:  # pragma: no cover - the test extra installs it
    webdriver = None

if webdriver is None:
    pytest.skip("selenium is not installed (pip install -e '.[test]')", allow_module_level=True)
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip(
        "chromium and chromedriver are not installed "
        "(apt-get install -y chromium chromium-driver; .ci/run does it)",
        allow_module_level=True,
    )


def artifacts_dir() -> Path:
    path = Path(os.environ.get("MESHLB_ARTIFACTS") or tempfile.mkdtemp(prefix="meshlb-dash-"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def mesh_of_three() -> Iterator[list[Proc]]:
    with contextlib.ExitStack() as stack:
        nodes: list[Proc] = []
        for i in range(3):
            sim = stack.enter_context(sim_ollama(tokens_per_second=60, parallel=4))
            join = [] if i == 0 else ["--join", f"127.0.0.1:{nodes[0].extra['gossip_port']}"]
            nodes.append(stack.enter_context(meshlb_node(sim.url, *join, node_id=f"gpu{i + 1}")))
        ids = {"gpu1", "gpu2", "gpu3"}
        wait_until(lambda: all(alive_ids(n) == ids for n in nodes), 30, "three nodes joined")
        yield nodes


@contextlib.contextmanager
def load(nodes: list[Proc]) -> Iterator[None]:
    """Streams of short generates on every node, and long async tasks (running ones)."""
    stop = threading.Event()

    def requests(node: Proc) -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                try:
                    client.post(
                        f"{node.url}/api/generate",
                        json={"model": MODEL, "prompt": "hi", "options": {"num_predict": 12}},
                    )
                except httpx.HTTPError:
                    stop.wait(0.5)  # a killed node: do not spin

    def tasks() -> None:
        with httpx.Client(timeout=10) as client:
            for i in itertools.count():
                if stop.wait(0.7) or i >= 40:
                    return
                with contextlib.suppress(httpx.HTTPError):
                    client.post(
                        f"{nodes[i % len(nodes)].url}/v1/tasks",
                        json={
                            "kind": "generate",
                            "model": MODEL,
                            "priority": 1 + i % 10,
                            "request": {"prompt": "a long one", "options": {"num_predict": 600}},
                        },
                    )

    threads = [threading.Thread(target=requests, args=(n,), daemon=True) for n in nodes * 4]
    threads.append(threading.Thread(target=tasks, daemon=True))
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join(35)


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    options.add_argument("--window-size=1500,1900")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(check: Callable[[], Any], timeout_s: float, what: str) -> float:
    """Poll `check` (a page read) until truthy; the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        with contextlib.suppress(Exception):
            if check():
                return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"the dashboard did not show {what} within {timeout_s:g} s")


def member_states(driver: Any) -> dict[str, str]:
    rows = driver.find_elements(By.CSS_SELECTOR, "#members tbody tr[data-node]")
    return {r.get_attribute("data-node"): r.get_attribute("data-state") for r in rows}


def test_dashboard_shows_a_mesh_under_load_and_a_node_dying(browser: Any) -> None:
    out = artifacts_dir()
    print(f"\ndashboard screenshots in {out}")
    with mesh_of_three() as nodes:
        browser.get(nodes[0].url + "/")
        wait_for(
            lambda: (
                set(member_states(browser).values()) == {"alive"}
                and len(member_states(browser)) == 3
            ),
            15,
            "three alive members",
        )
        assert set(member_states(browser)) == {"gpu1", "gpu2", "gpu3"}
        time.sleep(5)  # a few samples on the charts
        browser.save_screenshot(str(out / "dashboard-idle.png"))

        browser.find_element(By.CSS_SELECTOR, '#window button[data-s="300"]').click()
        with load(nodes):
            rps = browser.find_element(By.ID, "chart-rps")
            wait_for(lambda: float(rps.get_attribute("data-peak") or 0) > 0, 20, "throughput")
            wait_for(
                lambda: browser.find_elements(
                    By.CSS_SELECTOR, '#tasks tbody tr[data-state="running"]'
                ),
                20,
                "a running task",
            )
            assert rps.find_elements(By.CSS_SELECTOR, "polyline"), "no line drawn"
            wait_for(
                lambda: browser.find_elements(By.CSS_SELECTOR, "#placements li[data-decision]"),
                10,
                "placement decisions",
            )
            time.sleep(6)
            browser.save_screenshot(str(out / "dashboard-load.png"))

            mesh_tasks = httpx.get(f"{nodes[0].url}/v1/tasks?state=running").json()["tasks"]
            held_by_gpu3 = any(t["node"] == "gpu3" for t in mesh_tasks)
            nodes[2].kill()  # SIGKILL gpu3
            killed_at = time.monotonic()
            took = wait_for(lambda: member_states(browser).get("gpu3") == "dead", 15, "gpu3 dead")
            print(f"gpu3 shown dead {took:.1f} s after SIGKILL")
            row = browser.find_element(By.CSS_SELECTOR, '#members tr[data-node="gpu3"]')
            loads = [c.text for c in row.find_elements(By.CSS_SELECTOR, "td.load")]
            assert loads and all(t == "—" for t in loads), f"a dead node's stale load: {loads}"
            assert "dead" in row.find_element(By.CSS_SELECTOR, "td.fresh").text
            assert time.monotonic() - killed_at < 15 + 1
            wait_for(
                lambda: browser.find_elements(
                    By.CSS_SELECTOR, '#mesh-events li[data-kind="dead"][data-node="gpu3"]'
                ),
                10,
                "the death in the membership events",
            )
            if held_by_gpu3:  # its heir says so (after the death is confirmed)
                wait_for(
                    lambda: browser.find_elements(
                        By.CSS_SELECTOR, '#mesh-events li[data-kind="took_over"][data-node="gpu3"]'
                    ),
                    20,
                    "a take-over of gpu3's tasks",
                )
            time.sleep(3)
            browser.save_screenshot(str(out / "dashboard-load-one-dead.png"))
        assert rps.find_elements(By.CSS_SELECTOR, "polyline")
        # Read the console while the mesh is still up: once it is torn down, the
        # page's next poll of its (stopped) node is refused, and that is no defect.
        errors = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
        browser.get("about:blank")
    assert not errors, f"the page logged errors: {errors}"
