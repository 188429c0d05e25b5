"""The dashboard in a real browser: Debian's chromium, driven by playwright, against a real
bus process and a real worker. The page signs in from its URL fragment, shows a running
job and its end, a failed job's traceback, cancels a job with its button, and reconnects
when the bus restarts. A screenshot is saved under ``test-artifacts/``; with
``SCHEDBUS_UPDATE_SCREENSHOT=1`` it also replaces ``docs/dashboard.png`` (the README's).

Never skipped: ``scripts/setup`` installs chromium; without it this test fails saying so.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import ROOT, BusProcess, Commands, unit
from dashboard_helpers import WireProducer, get
from playwright.async_api import Browser, Page, async_playwright, expect

pytestmark = pytest.mark.timeout(120)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "test-artifacts"
SAMPLE_TASKS = str(ROOT / "tests" / "sample_tasks.py")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's chromium, headless; fails (never skips) when it is not installed."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/setup (it installs Debian's chromium)")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


async def until_schedulers(bus: BusProcess, count: int) -> None:
    """Wait until ``/healthz`` counts ``count`` schedulers."""
    url = f"http://127.0.0.1:{bus.port}/healthz"
    async with asyncio.timeout(20 * unit()):
        while (await get(url)).json()["schedulers"] != count:
            await asyncio.sleep(0.05)


async def screenshot(page: Page) -> None:
    """Save the page under test-artifacts/, and as docs/dashboard.png when asked."""
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    await page.screenshot(path=str(shot), full_page=True)
    if os.environ.get("SCHEDBUS_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, ROOT / "docs" / "dashboard.png")


async def test_the_dashboard_shows_jobs_live_and_cancels_one(
    browser: Browser, commands: Commands, tmp_path: Path
) -> None:
    bus = BusProcess(commands, tmp_path / "bus.db")
    await bus.start()
    await commands.start(
        "scheduler.worker",
        "--bus",
        bus.url,
        "--tasks",
        SAMPLE_TASKS,
        "-s",
        "3",
        "--name",
        "worker-1",
    )
    await until_schedulers(bus, 1)
    page = await browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"http://127.0.0.1:{bus.port}/#token={bus.token('admin')}")
    timeout = 20_000 * unit()
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=timeout)
    assert "token" not in page.url  # the fragment is dropped from the address bar
    assert await page.evaluate("sessionStorage.getItem('schedbus.token')") == bus.token("admin")
    await expect(page.locator('[data-scheduler="worker-1"]')).to_be_visible(timeout=timeout)

    # A failed job with its traceback.
    producer = await WireProducer.open(bus.url, bus.token("producer"))
    failing = await producer.submit(task="explode", args={"message": "disk full"}, priority=6)
    assert (await producer.wait_final(failing))["event"] == "failed"
    failed = page.locator(f'#failed .failed-job[data-id="{failing}"]')
    await expect(failed).to_contain_text("TaskFailure: disk full", timeout=timeout)
    await failed.locator("summary").click()
    await expect(failed.locator("pre.tb")).to_contain_text("raise TaskFailure(message)")

    # A job running in a slot, then finishing.
    short = await producer.submit(runtime=3 * unit(), priority=2)
    block = page.locator(f'.job-block[data-id="{short}"]')
    await expect(block).to_have_attribute("data-state", "running", timeout=timeout)
    await expect(block).to_contain_text(short[:8])
    long_jobs = [await producer.submit(runtime=300.0, priority=p) for p in (0, 8)]
    for job_id in long_jobs:
        running = page.locator(f'.job-block[data-id="{job_id}"]')
        await expect(running).to_have_attribute("data-state", "running", timeout=timeout)
    done = page.locator(f'#events tr[data-id="{short}"]', has_text="succeeded")
    await expect(done).to_be_visible(timeout=timeout)
    await expect(block).to_have_count(0)
    await expect(page.locator("#chart-throughput canvas")).to_have_count(1, timeout=timeout)
    await expect(page.locator('[data-figure="succeeded"] b')).to_have_text("1", timeout=timeout)
    await screenshot(page)

    # Cancel one from its block.
    victim = long_jobs[1]
    await page.locator(f'.job-block[data-id="{victim}"] button.x').click()
    cancelled = page.locator(f'#events tr[data-id="{victim}"]', has_text="cancelled")
    await expect(cancelled).to_be_visible(timeout=timeout)
    await expect(page.locator(f'.job-block[data-id="{victim}"]')).to_have_count(0)
    assert (await producer.wait_final(victim))["event"] == "cancelled"

    # Search by id prefix finds the job and shows its state.
    await page.fill("#search-input", long_jobs[0][:6])
    await page.press("#search-input", "Enter")
    found = page.locator(f'#found .found-job[data-id="{long_jobs[0]}"]')
    await expect(found).to_contain_text("running", timeout=timeout)

    # Retry answers (the bus's reply or its refusal) in the toast.
    await failed.get_by_role("button", name="Retry").click()
    await expect(page.locator("#toast")).to_contain_text(f"retry {failing[:8]}", timeout=timeout)
    await producer.close()

    # The page reconnects when the bus restarts.
    await bus.kill()
    await expect(page.locator("#conn")).not_to_have_attribute("data-state", "live", timeout=timeout)
    await bus.start()
    await expect(page.locator("#conn")).to_have_attribute("data-state", "live", timeout=timeout)
    assert errors == []


async def test_without_a_token_the_page_asks_for_one(
    browser: Browser, commands: Commands, tmp_path: Path
) -> None:
    bus = BusProcess(commands, tmp_path / "bus.db")
    await bus.start()
    page = await browser.new_page()
    await page.goto(f"http://127.0.0.1:{bus.port}/")
    timeout = 20_000 * unit()
    conn = page.locator("#conn")
    await expect(conn).to_have_attribute("data-state", "refused", timeout=timeout)
    await expect(page.locator("#signin")).to_be_visible()
    await expect(page.locator("#signin-error")).to_contain_text("token required")
    await page.fill("#signin-token", "not-a-token")
    await page.press("#signin-token", "Enter")
    await expect(page.locator("#signin-error")).to_contain_text("invalid token", timeout=timeout)
    await page.fill("#signin-token", bus.token("monitor"))
    await page.press("#signin-token", "Enter")
    await expect(conn).to_have_attribute("data-state", "live", timeout=timeout)
    await expect(page.locator("#signin")).to_be_hidden()
    await page.click("#sign-out")
    await expect(page.locator("#signin")).to_be_visible()
    assert await page.evaluate("sessionStorage.getItem('schedbus.token')") is None
