"""An example unlearnbench plug-in: the EU-k / CF-k method (``unlearnbench_euk.eu_k``)."""
