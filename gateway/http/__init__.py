"""HTTP: the API routes, error responses, CORS, OpenAPI, metrics, probes and the web page."""
