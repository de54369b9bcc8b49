"""Developer tools that are not part of the library's runtime (the emulator's image builder)."""
