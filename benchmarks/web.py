"""The web app under gunicorn, on a private stack started as `make run` starts it:

1. POST throughput: client processes send prediction requests back to back for a while;
   prints requests/s and POST latency (each POST returns once Kafka has acknowledged it).
2. POST -> OK: each client posts, then polls the response endpoint every 10 ms until the streaming
   job's answer is there; prints that latency, what a person waits for minus the page's poll period.

    .venv/bin/python -m benchmarks.web [--clients 4] [--seconds 15]

Prints figures; asserts nothing.
"""

import argparse
import http.client
import json
import multiprocessing
import time
import urllib.parse

from benchmarks.private_platform import percentiles, request_factory, running_stack
from flight_platform.settings import Settings

PREDICT = "/flights/delays/predict/classify_realtime"
POLL_INTERVAL_S = 0.01


def form(request) -> bytes:
    return urllib.parse.urlencode({
        "DepDelay": request.DepDelay, "Carrier": request.Carrier, "FlightDate": request.FlightDate,
        "FlightNum": request.FlightNum, "Origin": request.Origin, "Dest": request.Dest}).encode()


def client(settings: Settings, seed: int, seconds: float, wait_for_answer: bool) -> list[float]:
    """One client on a keep-alive connection; returns per-request latencies in ms."""
    make_request = request_factory(settings, seed)
    bodies = [form(make_request()) for _ in range(1000)]
    connection = http.client.HTTPConnection(settings.web_host, settings.web_port, timeout=30)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    latencies = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        connection.request("POST", PREDICT, body=bodies[len(latencies) % len(bodies)],
                           headers=headers)
        response = connection.getresponse()
        body = json.loads(response.read())
        if response.status != 200:
            raise RuntimeError(f"POST failed ({response.status}): {body}")
        while wait_for_answer:
            connection.request("GET", f"{PREDICT}/response/{body['id']}")
            if json.loads(connection.getresponse().read())["status"] == "OK":
                break
            time.sleep(POLL_INTERVAL_S)
        latencies.append((time.perf_counter() - started) * 1000)
    connection.close()
    return latencies


def run_phase(settings: Settings, clients: int, seconds: float, wait_for_answer: bool) -> str:
    with multiprocessing.Pool(clients) as pool:
        started = time.monotonic()
        results = pool.starmap(client, [(settings, seed, seconds, wait_for_answer)
                                        for seed in range(clients)])
        elapsed = time.monotonic() - started
    latencies = [latency for result in results for latency in result]
    what = "POST -> OK" if wait_for_answer else "POST"
    return (f"{what:>11}, {clients} clients: {len(latencies):,} requests, "
            f"{len(latencies) / elapsed:,.0f}/s   latency {percentiles(latencies)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=15)
    args = parser.parse_args()
    with running_stack() as settings:
        results = [run_phase(settings, args.clients, args.seconds, wait_for_answer=False),
                   run_phase(settings, 1, args.seconds, wait_for_answer=True),
                   run_phase(settings, args.clients, args.seconds, wait_for_answer=True)]
    print("\nWeb app under gunicorn (2 workers x 4 threads), Kafka produce acknowledged per POST")
    print("\n".join(results))


if __name__ == "__main__":
    main()
