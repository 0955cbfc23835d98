#!/usr/bin/env bash
# make reproduce: the full chain behind the thesis tables. Not built yet: the stages
# it chains (generate, train, evaluate, report) land first.
echo "make reproduce: not implemented yet (needs every stage and the report)."
exit 0
