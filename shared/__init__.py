"""RunLedger: the pure domain and the contracts shared by the services and by clients.

Installed under the import name ``runledger`` from the folder ``shared/``. Nothing in here
imports ``runledger.services`` (the runtime and the services, from the folder ``services/``);
``tests/unit/test_layers.py`` keeps it so.
"""
