"""HTTP layer: Flask app factory, request/response schemas, one error table. Knows HTTP, not torch."""
