"""Small utilities with no knowledge of requests: the LRU cache, the redactor and scrubber, cw_home, encryption at rest."""
