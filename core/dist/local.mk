## core/dist/local.mk — collectives, process groups, mesh (issue 5): sources and tests.
