"""Code every runtime shares: the request/response contract, the feature rules, the NumPy scorer
and the model store. No Dagster and no Spark imports: the web app and the stream import this."""
