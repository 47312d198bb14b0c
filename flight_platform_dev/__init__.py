"""The development harness: what the tests and benchmarks use to run whole private platforms, load
them with requests and break them, plus the data and clusters they need. It is not part of the
product: `pip install .` does not ship it, and nothing in flight_platform or web imports it."""
