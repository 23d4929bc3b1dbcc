"""One module per compared system, each exposing the same benchmark functions a, b, c, f, g, h."""
