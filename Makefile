.PHONY: help demo test stop bench lint infra clean

help: ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

demo: ## set up everything, start infra + services + simulator, print where to look
	bash scripts/demo.sh

test: ## run every check and test (what .ci/run runs)
	bash scripts/test.sh

stop: ## stop the demo's services and the local infrastructure
	bash scripts/stop.sh

bench: ## run the benchmarks; writes bench/out/report.json
	bash bench/run.sh

lint: ## ruff, ruff format --check, mypy
	uv run ruff check . && uv run ruff format --check . && uv run mypy

infra: ## start Kafka, PostgreSQL and Mosquitto only
	bash deploy/local/infra.sh start

clean: ## stop everything and delete local data (keeps downloads)
	bash deploy/local/infra.sh clean
