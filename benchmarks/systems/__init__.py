"""One module per compared system, each exposing the same benchmark functions a, b, c, f, g, h,
for the object store, i, j, k, k0, l, m, n (a missing one is listed in NOT_APPLICABLE), and, for
actors (volley and ray only), o, p, q, r, s."""
