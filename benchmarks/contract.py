"""Parse cost per Kafka message: `PredictionRequest.from_message`, the stream worker's parse step.

    python -m benchmarks.contract

Prints microseconds per message (best of five rounds) for a valid request and for typical
off-contract ones (those raise InvalidRequest, whose message building is part of the cost).
"""

import json
import timeit

from flight_platform.core.contract import InvalidRequest, PredictionRequest

ROUNDS, NUMBER = 5, 20_000


def per_message_us(payload: bytes) -> float:
    def parse():
        try:
            PredictionRequest.from_message(payload)
        except InvalidRequest:
            pass

    return min(timeit.repeat(parse, number=NUMBER, repeat=ROUNDS)) / NUMBER * 1e6


def main() -> None:
    valid = PredictionRequest.create(Carrier="DL", FlightDate="2013-06-15", FlightNum="1519",
                                     Origin="JFK", Dest="ATL", DepDelay=5.0, Distance=760.0)
    message = json.loads(valid.to_message())
    cases = {
        "valid request": valid.to_message(),
        "one bad field (DepDelay \"5\")": json.dumps({**message, "DepDelay": "5"}).encode(),
        "wrong DayOfWeek": json.dumps({**message, "DayOfWeek": message["DayOfWeek"] % 7 + 1}).encode(),
        "not JSON": b"{not json",
    }
    print(f"{'message':34} {'us/message':>10}")
    for name, payload in cases.items():
        print(f"{name:34} {per_message_us(payload):10.2f}")


if __name__ == "__main__":
    main()
