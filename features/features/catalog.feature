Feature: The model catalog is a projection of model events

  @CAT-7
  Scenario: A catalog of 10,000 models is read page by page, by node
    Given a running cluster without workers
    When 10000 models on 10 nodes are registered in the catalog
    Then paging through the queen's catalog for one node 300 at a time returns its 1000 models once each, in order
    And paging through the whole catalog 1000 at a time returns every one of the 10000 models once
    And a page size over the limit is refused with HTTP 400 naming "limit"

  @CAT-3
  Scenario: Several hives on one node provision and register the same model at once
    Given a cluster of my own without workers, with 2 more hives on its node
    When 3 workers for the default model are started at once with rbee workers start
    Then all 3 workers become ready
    And the log holds exactly one model.registered for the model on that node
    And no worker start failed
