"""Flask front end: a prediction form, a Kafka request endpoint and a polling response endpoint."""
