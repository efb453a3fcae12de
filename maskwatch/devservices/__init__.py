"""Local services of the embedded default, managed under ``$MASKWATCH_HOME``.

``manager.up/down/status`` (CLI: ``maskwatch services``) drive ``broker.Broker`` (Tansu),
``seaweed.Seaweed`` (S3 store behind a durable broker) and ``store_service.StoreService`` (the
``store_server`` process: chdb over the ClickHouse HTTP interface); ``topics.ensure_topics`` creates the
Kafka topics on any broker.
"""
