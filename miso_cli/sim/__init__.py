"""The virtual backend: catalog-paced jobs on a virtual clock."""
