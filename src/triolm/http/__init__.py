"""The HTTP layer, the only code that knows Quart and Hypercorn: the app, routes, auth,
body parsing, the framework patches."""
