"""Here so that pytest puts this folder on sys.path (the default import mode does that for a
conftest's folder): the tests under `sharing/` import the oracle `triehelpers` too."""
