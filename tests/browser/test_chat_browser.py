"""The sample chat in a real browser: two pages on two dynos (gunicorn, as in
the Procfile) talk through Kafka. Headless Debian Chromium via Selenium."""
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from flask_signalr_kafka.cli.broker import free_port

ROOT = Path(__file__).parent.parent.parent


def start_dyno(broker, prefix, log_dir, name, port=None):
    port = port or free_port()
    env = dict(os.environ, KAFKA_URL=f"kafka://{broker.bootstrap}", CHAT_TOPIC_PREFIX=prefix,
               PORT=str(port), DYNO=name, BROKER_ENGINE=broker.engine)
    # The Procfile's web command, for one dyno.
    gunicorn = Path(sys.executable).parent / "gunicorn"
    log = open(Path(log_dir) / f"browser-{name}.log", "ab")
    process = subprocess.Popen(
        [str(gunicorn), "--worker-class",
         "geventwebsocket.gunicorn.workers.GeventWebSocketWorker", "--workers", "1",
         "--bind", f"127.0.0.1:{port}", "--no-control-socket", "--graceful-timeout", "5",
         "sample_app.app:app"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(url + "/socket.io.min.js", timeout=1).status_code == 200:
                return process, url
        except requests.RequestException:
            pass
        assert process.poll() is None, f"dyno {name} exited; see {log.name}"
        assert time.monotonic() < deadline, f"dyno {name} did not start; see {log.name}"
        time.sleep(0.1)


@pytest.fixture
def dynos(broker, artifacts):
    prefix = f"browser-{uuid.uuid4().hex[:8]}"
    started = [start_dyno(broker, prefix, artifacts, f"web.{i}") for i in (1, 2)]
    yield [url for _, url in started]
    for process, _ in started:
        process.terminate()
        process.wait(15)


def log_has(driver, text, timeout=15):
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(
        lambda d: text in d.find_element("id", "log").text,
        message=f"the page never showed {text!r}",
    )


def sign_in(driver, name):
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element("id", "name").send_keys(name)
    driver.find_element("id", "connect").click()
    WebDriverWait(driver, 15).until(lambda d: d.find_element("id", "me").text)
    return driver.find_element("id", "me").get_attribute("data-sid")


def fill(driver, field, value):
    element = driver.find_element("id", field)
    element.clear()
    element.send_keys(value)


def both_in_the_lobby(alice_page, bob_page):
    """Sign alice and bob in and have both join the lobby; ``(alice, bob,
    bob's connection id)``."""
    alice, bob = f"alice{uuid.uuid4().hex[:4]}", f"bob{uuid.uuid4().hex[:4]}"
    sign_in(alice_page, alice)
    bob_sid = sign_in(bob_page, bob)
    for page in (alice_page, bob_page):
        page.find_element("id", "join").click()
    log_has(alice_page, f"[lobby] {bob}: joined lobby")
    return alice, bob, bob_sid


def test_two_dynos_chat_in_a_real_browser(dynos, browser, artifacts):
    alice_page, bob_page = browser(dynos[0]), browser(dynos[1])
    assert "web.1" in alice_page.find_element("id", "dyno").text
    assert "web.2" in bob_page.find_element("id", "dyno").text
    # One room, joined from both dynos: a line typed on web.1 shows on web.2.
    alice, bob, bob_sid = both_in_the_lobby(alice_page, bob_page)
    fill(alice_page, "text", "hello from web.1")
    alice_page.find_element("id", "say").click()
    log_has(bob_page, f"[lobby] {alice}: hello from web.1")
    assert "sent from dyno web.1" in bob_page.find_element("id", "log").text

    # Who is here: the lobby's members on both dynos (fetch_sockets), and
    # the dynos alive (server_count).
    from selenium.webdriver.support.ui import WebDriverWait

    alice_page.find_element("id", "who").click()
    WebDriverWait(alice_page, 15).until(
        lambda d: f"{bob} on dyno web.2" in d.find_element("id", "members").text,
        message="the page never listed bob on web.2")
    assert f"{alice} on dyno web.1" in alice_page.find_element("id", "members").text
    assert alice_page.find_element("id", "dynos").text.startswith("2 dyno(s) alive · 2 in lobby")

    # A private message reaches the user on the other dyno.
    fill(alice_page, "to", bob)
    fill(alice_page, "text", "psst, only you")
    alice_page.find_element("id", "whisper").click()
    log_has(bob_page, f"[private to {bob}] {alice}: psst, only you")

    # A remote join: alice puts bob's connection (held by web.2) in a room.
    fill(alice_page, "room", "backstage")
    alice_page.find_element("id", "join").click()
    fill(alice_page, "pull-sid", bob_sid)
    alice_page.find_element("id", "pull").click()
    log_has(bob_page, f"pulled {bob_sid} into backstage")
    fill(alice_page, "text", "welcome backstage")
    alice_page.find_element("id", "say").click()
    log_has(bob_page, f"[backstage] {alice}: welcome backstage")

    alice_page.save_screenshot(str(artifacts / "browser-web1.png"))
    bob_page.save_screenshot(str(artifacts / "browser-web2.png"))
    assert (artifacts / "browser-web2.png").stat().st_size > 0


def test_a_tab_keeps_its_connection_and_every_line_across_a_dyno_restart(
        broker, artifacts, browser):
    """The dyno a tab is on is restarted (SIGTERM, as a deploy does, then
    started again): the tab shows "recovered", keeps its connection id, and
    shows the lines sent while its dyno was down."""
    prefix = f"browser-{uuid.uuid4().hex[:8]}"
    web1 = start_dyno(broker, prefix, artifacts, "web.1")
    web2 = start_dyno(broker, prefix, artifacts, "web.2")
    started = [web1, web2]
    try:
        alice_page, bob_page = browser(web1[1]), browser(web2[1])
        alice, bob, bob_sid = both_in_the_lobby(alice_page, bob_page)

        process, url = web2
        # gunicorn: the worker drains (the tab is handed back at once), then
        # waits out the browser's idle keep-alive connections.
        process.terminate()
        assert process.wait(30) == 0
        for text in ("while you were away 1", "while you were away 2"):
            fill(alice_page, "text", text)
            alice_page.find_element("id", "say").click()
            log_has(alice_page, f"[lobby] {alice}: {text}")
        fill(alice_page, "to", bob)
        fill(alice_page, "text", "a private line while away")
        alice_page.find_element("id", "whisper").click()
        port = int(url.rsplit(":", 1)[1])
        started.append(start_dyno(broker, prefix, artifacts, "web.2", port=port))

        log_has(bob_page, "recovered: connection", timeout=30)
        log_has(bob_page, f"[lobby] {alice}: while you were away 1")
        log_has(bob_page, f"[lobby] {alice}: while you were away 2")
        log_has(bob_page, f"[private to {bob}] {alice}: a private line while away")
        assert bob_page.find_element("id", "me").get_attribute("data-sid") == bob_sid
        text = bob_page.find_element("id", "log").text
        assert text.count("while you were away 1") == 1, text
        # Still in the room, on the restarted dyno: new lines arrive too.
        fill(alice_page, "text", "after the restart")
        alice_page.find_element("id", "say").click()
        log_has(bob_page, f"[lobby] {alice}: after the restart")
        bob_page.save_screenshot(str(artifacts / "browser-recovered.png"))
    finally:
        for process, _ in started:
            if process.poll() is None:
                process.terminate()
                process.wait(30)
