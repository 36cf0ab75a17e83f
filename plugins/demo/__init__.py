"""The demo: three instances of a small service running the example plugins, driven through
a checked scenario (``clusterbus demo``), and one such instance (``clusterbus node``).

:mod:`plugins.demo.app` is the scenario driver, :mod:`plugins.demo.node` one instance. Both
need the ``sqlalchemy`` extra (the example plugins keep their data in a database), so this
package imports neither: the command line imports them only when a demo command runs.
"""

APP_NAME = "clusterbus-demo"
"""The demo service's app name: ``clusterbus node``'s default ``--app``."""
