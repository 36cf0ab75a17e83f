"""Fault-injection helpers shared by the test suite (raw messages, a TCP proxy, cancellation
drivers). Nothing here is simulated: each helper acts on the real broker or the real bus."""
