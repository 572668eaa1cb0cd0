"""Session fixtures: where artifacts go, and the broker every integration
test runs against, once per engine (and per pytest-xdist worker).

``make test`` runs each broker-backed test on Apache Kafka (a one-node KRaft
cluster) and on Tansu. ``--engine kafka`` (or ``BROKER_ENGINE=kafka``) picks
one engine for a quick run.
"""
import os
import shutil
import uuid
from collections import Counter
from pathlib import Path

import pytest

from flask_signalr_kafka.cli.broker import ENGINES, start_broker

ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", Path(__file__).parent.parent / "test-artifacts"))


def pytest_addoption(parser):
    parser.addoption(
        "--engine", choices=(*ENGINES, "both"), default=os.environ.get("BROKER_ENGINE", "both"),
        help="broker engine of the integration tests (default: both, or $BROKER_ENGINE)",
    )
    parser.addoption(
        "--async-mode", choices=("gevent", "threading"),
        default=os.environ.get("ASYNC_MODE", "gevent"),
        help="how the integration tests' servers run Flask-SocketIO (default: gevent, or "
             "$ASYNC_MODE)",
    )
    parser.addoption(
        "--client", choices=("kafka-python", "confluent"),
        default=os.environ.get("KAFKA_CLIENT", "kafka-python"),
        help="the Kafka client library of the servers' managers (default: kafka-python, or "
             "$KAFKA_CLIENT)",
    )


def pytest_configure(config):
    # Every server process a test starts inherits it (tests/server_app.py).
    os.environ["ASYNC_MODE"] = config.getoption("async_mode")
    os.environ["KAFKA_CLIENT"] = config.getoption("client")
    config.pluginmanager.register(LongestGroupsFirst(), "longest-groups-first")


def pytest_report_header(config):
    return (f"servers' async mode: {config.getoption('async_mode')}, "
            f"Kafka client: {config.getoption('client')}")


def pytest_generate_tests(metafunc):
    if "engine" in metafunc.fixturenames:
        chosen = metafunc.config.getoption("engine")
        engines = ENGINES if chosen == "both" else (chosen,)
        metafunc.parametrize("engine", engines, scope="session")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    if config.getoption("async_mode") != "gevent" or config.getoption("client") != "kafka-python":
        # Their servers are the same in every pass: the default one runs them.
        repeated = [item for item in items if item.get_closest_marker("asgi_only")]
        if repeated:
            config.hook.pytest_deselected(items=repeated)
            items[:] = [item for item in items if not item.get_closest_marker("asgi_only")]
    # For pytest-xdist's --dist loadgroup (make test): a module's tests stay
    # on one worker, so a module-scoped broker or fleet starts once, and the
    # tests marked serial share one worker, so no two of them overlap:
    # serial("name") makes a serial group of its own, which may run beside
    # the main one (test_faults: about 6 minutes on its own cluster).
    # tryfirst: xdist's own hook (on its workers) turns the marks into the
    # groups it schedules by.
    for item in items:
        if not item.get_closest_marker("xdist_group"):
            serial = item.get_closest_marker("serial")
            if serial:
                group = f"serial-{serial.args[0] if serial.args else 'main'}"
            elif item.get_closest_marker("spread"):
                group = item.nodeid  # alone: its module shares no fixture
            else:
                group = item.nodeid.split("::")[0]
            item.add_marker(pytest.mark.xdist_group(group))


class LongestGroupsFirst:
    """The longest groups first (make test passes --no-loadscope-reorder,
    so xdist hands them out in this order): the serial groups (about 13
    minutes of the default pass together), then the modules that start servers,
    most tests first, then the unit tests, which fill the gaps. xdist's own
    order (most tests first) put the long groups last. trylast: after
    pytest's own reordering by fixture, which a stable sort keeps within
    each group."""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items):
        def group(item):
            return item.get_closest_marker("xdist_group").args[0]

        sizes = Counter(group(item).split("::")[0] for item in items)

        def rank(item):
            name = group(item)
            module = name.split("::")[0]
            return (not name.startswith("serial-"), module.startswith("tests/unit/"),
                    -sizes[module])

        items.sort(key=rank)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    # xdist's workers mark a grouped test by suffixing its id with "@group";
    # where that write is lost (pytest 9.2 with xdist 3.8 moved the id),
    # every test is scheduled alone: serial tests overlap and module
    # fixtures start once per worker. Stop rather than run slow and flaky.
    if node.config.getvalue("dist") == "loadgroup" and ids and not any("@" in i for i in ids):
        pytest.exit("pytest-xdist's --dist loadgroup lost its groups (no test id ends in "
                    "'@group'): this pytest and pytest-xdist do not work together; install "
                    "the versions setup.cfg pins (pip install -e '.[test]')", returncode=4)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def broker(engine, artifacts):
    """A broker of ``engine`` on free loopback ports, for the whole session
    (each xdist worker has its own);
    its log is kept under test-artifacts/ (a failing test names it)."""
    b = start_broker(engine, log_dir=artifacts)
    yield b
    b.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed and "broker" in getattr(item, "fixturenames", ()):
        brokers = [v for k, v in item.funcargs.items() if hasattr(v, "log_paths")]
        logs = [str(p) for b in brokers for p in b.log_paths]
        if logs:
            report.sections.append(("broker logs", "\n".join(logs)))
    return report


CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture
def browser(artifacts):
    """``open_page(url)``: a headless Debian Chromium (Selenium) on ``url``.
    Skipped only outside CI: there `make test` installs the browser first."""
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)) and not os.environ.get("CI"):
        pytest.skip("needs Debian's chromium and chromium-driver (make test installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    drivers, profiles = [], []

    def open_page(url):
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                     "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync",
                     "--window-size=1000,800"):
            options.add_argument(flag)
        profiles.append(artifacts / f"chromium-{uuid.uuid4().hex[:8]}")
        options.add_argument(f"--user-data-dir={profiles[-1]}")
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        drivers.append(driver)
        driver.get(url)
        return driver

    yield open_page
    for driver in drivers:
        driver.quit()
    # Only its own profiles: another xdist worker's browser may be using one.
    for profile in profiles:
        shutil.rmtree(profile, ignore_errors=True)
