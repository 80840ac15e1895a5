"""One module per resource; each route validates, calls the domain and shapes the answer."""
