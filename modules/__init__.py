"""Building blocks of the so-vits-svc 4.1 networks and their data."""
