"""Management commands of the kernel (project tooling; they import no context)."""
