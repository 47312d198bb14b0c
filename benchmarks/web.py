"""The web app under gunicorn, on a private stack started as `make run` starts it:

1. POST throughput at 4, 16 and 64 clients, each on its own keep-alive connection, sending
   prediction requests back to back; prints POST/s, POST latency (each POST returns once Kafka has
   acknowledged it) and the CPU each part of the stack spent per POST.
2. POST -> answer as a page gets it: a client posts, then asks for the answer, either long polling
   (`?wait=`, today's page) or polling every 500 ms (the book's page); prints that latency.
3. POSTs while 1,000 pages wait for answers (long polls for requests never sent): the waiting
   must not stop new POSTs being taken.

    .venv/bin/python -m benchmarks.web [--clients 4,16,64] [--seconds 15] [--waiting-pages 1000]
                                       [--warm-up-seconds 15]

Prints figures; asserts nothing.
"""

import argparse
import http.client
import json
import multiprocessing
import threading
import time
import urllib.parse
import uuid
from collections import defaultdict

import psutil

from benchmarks.private_platform import percentiles, request_factory, running_stack
from flight_platform.settings import Settings

PREDICT = "/flights/delays/predict/classify_realtime"
RESPONSE = PREDICT + "/response/{id}"
CLIENT_PROCESSES = 4  # clients beyond this are threads in these processes
LONG_POLL_S = 20  # what the page asks for (the endpoint's cap)
BOOK_POLL_INTERVAL_S = 0.5


def form(request) -> bytes:
    return urllib.parse.urlencode({
        "DepDelay": request.DepDelay, "Carrier": request.Carrier, "FlightDate": request.FlightDate,
        "FlightNum": request.FlightNum, "Origin": request.Origin, "Dest": request.Dest}).encode()


def get_json(connection: http.client.HTTPConnection, path: str) -> dict:
    connection.request("GET", path)
    return json.loads(connection.getresponse().read())


def one_client(settings: Settings, bodies: list[bytes], seconds: float, answer: str | None,
               latencies: list[float]) -> None:
    """Back-to-back POSTs on one keep-alive connection; with `answer` ("long poll" or "poll"),
    each POST is followed by getting its answer the way a page does."""
    connection = http.client.HTTPConnection(settings.web_host, settings.web_port, timeout=60)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        connection.request("POST", PREDICT, body=bodies[len(latencies) % len(bodies)],
                           headers=headers)
        response = connection.getresponse()
        body = json.loads(response.read())
        if response.status != 200:
            raise RuntimeError(f"POST failed ({response.status}): {body}")
        path = RESPONSE.format(id=body["id"])
        if answer == "long poll":
            while get_json(connection, f"{path}?wait={LONG_POLL_S}")["status"] != "OK":
                pass
        elif answer == "poll":
            time.sleep(BOOK_POLL_INTERVAL_S)
            while get_json(connection, path)["status"] != "OK":
                time.sleep(BOOK_POLL_INTERVAL_S)
        latencies.append((time.perf_counter() - started) * 1000)
    connection.close()


def client_process(settings: Settings, seed: int, threads: int, seconds: float,
                   answer: str | None) -> list[float]:
    make_request = request_factory(settings, seed)
    bodies = [form(make_request()) for _ in range(1000)]
    latencies: list[list[float]] = [[] for _ in range(threads)]
    workers = [threading.Thread(target=one_client, args=(settings, bodies, seconds, answer, mine))
               for mine in latencies]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return [latency for mine in latencies for latency in mine]


def waiting_pages(settings: Settings, pages: int, stop: threading.Event) -> list[Exception]:
    """`pages` connections, each long polling for an answer that never comes; returns once every
    one has sent its first request, with the list their failures will be added to."""
    sent = threading.Semaphore(0)
    failures: list[Exception] = []

    def wait():
        connection = http.client.HTTPConnection(settings.web_host, settings.web_port, timeout=60)
        path = f"{RESPONSE.format(id=uuid.uuid4())}?wait={LONG_POLL_S}"
        try:
            connection.request("GET", path)
        except (OSError, http.client.HTTPException) as error:
            failures.append(error)
            return
        finally:
            sent.release()
        try:
            while True:
                json.loads(connection.getresponse().read())
                if stop.is_set():
                    return
                connection.request("GET", path)
        except (OSError, http.client.HTTPException) as error:
            failures.append(error)

    for _ in range(pages):
        threading.Thread(target=wait, daemon=True).start()
    for _ in range(pages):
        sent.acquire()
    return failures


def role(process: psutil.Process, benchmark: list[str]) -> str:
    command = " ".join(process.cmdline())
    for part, name in [("gunicorn", "web app"), ("kafka.Kafka", "broker"),
                       ("secantus", "mongo server"),
                       # Dagster's run worker, where the streaming job runs
                       ("multiprocessing.spawn", "stream run"), ("dagster", "dagster"),
                       ("bin/dg ", "dagster")]:
        if part in command:
            return name
    return "clients" if process.cmdline() == benchmark else "other"


def cpu_seconds_by_role() -> dict[str, float]:
    """CPU seconds so far of every process this benchmark started, by its part in the stack."""
    benchmark = psutil.Process()
    by_role: dict[str, float] = defaultdict(float)
    for process in benchmark.children(recursive=True):
        try:
            times = process.cpu_times()
            by_role[role(process, benchmark.cmdline())] += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return by_role


def run_phase(settings: Settings, clients: int, seconds: float, answer: str | None = None,
              note: str = "") -> str:
    processes = min(clients, CLIENT_PROCESSES)
    cpu_before = cpu_seconds_by_role()
    with multiprocessing.Pool(processes) as pool:
        started = time.monotonic()
        results = pool.starmap(client_process, [
            (settings, seed, clients // processes + (seed < clients % processes), seconds, answer)
            for seed in range(processes)])
        elapsed = time.monotonic() - started
        cpu_after = cpu_seconds_by_role()
    latencies = [latency for result in results for latency in result]
    what = f"POST -> answer ({answer})" if answer else "POST"
    figures = (f"{what}{note}, {clients} clients: {len(latencies) / elapsed:,.0f}/s   "
               f"{percentiles(latencies)}")
    if answer is None:
        cpu_ms = {name: (cpu_after[name] - cpu_before.get(name, 0)) * 1000 / len(latencies)
                  for name in sorted(cpu_after, key=lambda n: cpu_before.get(n, 0) - cpu_after[n])}
        figures += "\n    CPU ms per POST: " + ", ".join(
            f"{name} {ms:.2f}" for name, ms in cpu_ms.items() if ms >= 0.005)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="4,16,64",
                        help="client counts for the POST throughput phases")
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--waiting-pages", type=int, default=1000)
    parser.add_argument("--warm-up-seconds", type=float, default=15,
                        help="POSTs before measuring: a fresh broker's JVM compiles its produce path "
                             "over its first few thousand requests")
    args = parser.parse_args()
    with running_stack() as settings:
        run_phase(settings, 16, args.warm_up_seconds)
        results = [run_phase(settings, int(clients), args.seconds)
                   for clients in args.clients.split(",")]
        results += [run_phase(settings, 1, args.seconds, answer="long poll"),
                    run_phase(settings, 16, args.seconds, answer="long poll"),
                    run_phase(settings, 1, args.seconds, answer="poll")]
        if args.waiting_pages:
            stop = threading.Event()
            failures = waiting_pages(settings, args.waiting_pages, stop)
            results.append(run_phase(settings, 16, args.seconds,
                                     note=f" while {args.waiting_pages:,} pages wait"))
            results.append(f"    waiting pages whose long poll failed: {len(failures)}")
            stop.set()
    print("\nWeb app under gunicorn, Kafka produce acknowledged per POST")
    print("\n".join(results))


if __name__ == "__main__":
    main()
