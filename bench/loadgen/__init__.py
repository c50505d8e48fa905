"""Load generators for the store benchmarks and tests: writer/reader processes (``stress``) and readers
beside writers for a bounded time (``load``). Not a library: nothing under the packages imports it."""
