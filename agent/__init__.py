"""Everything that touches Docker on a host. Imports only reconciler.model and .render."""
