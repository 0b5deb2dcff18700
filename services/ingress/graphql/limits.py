"""Document limits, checked after validation and before execution, so one request cannot starve
the rest: depth, aliases, field selections, ``limit`` arguments (0..max, with variables resolved)
and an estimated cost — every list field multiplies what is selected under it by its ``limit``
(or by ``default_list_size`` when it has none).

An over-limit document is refused whole with a GraphQL error whose ``extensions.code`` is
``QUERY_LIMIT_EXCEEDED`` and whose message names the limit and the setting that raises it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from graphql import (
    FieldNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLList,
    GraphQLNonNull,
    InlineFragmentNode,
    OperationDefinitionNode,
    ValidationContext,
    ValidationRule,
    VariableNode,
    Visitor,
    value_from_ast_untyped,
    visit,
)

CODE = "QUERY_LIMIT_EXCEEDED"


class _LimitVariables(Visitor):
    found = False

    def enter_argument(self, node, *_):
        if node.name.value == "limit":
            visit(node.value, _AnyVariable(self))
        return self.SKIP


class _AnyVariable(Visitor):
    def __init__(self, outer: _LimitVariables) -> None:
        super().__init__()
        self.outer = outer

    def enter_variable(self, node: VariableNode, *_):
        self.outer.found = True
        return self.BREAK


def depends_on_variables(document) -> bool:
    """Whether the limits verdict for ``document`` can change with the request's variables: only
    a ``limit`` argument's value is read from them."""
    visitor = _LimitVariables()
    visit(document, visitor)
    return visitor.found


@dataclass(frozen=True)
class DocumentLimits:
    max_depth: int = 12
    max_aliases: int = 30
    max_fields: int = 500
    max_limit: int = 1000
    max_cost: int = 50_000
    default_list_size: int = 100
    max_tokens: int = 5_000  # the parser stops past this many tokens (Prefect 1.x sends < 500)


def _is_list(type_) -> bool:
    while isinstance(type_, GraphQLNonNull):
        type_ = type_.of_type
    return isinstance(type_, GraphQLList)


class _Refused(Exception):
    def __init__(self, message: str, **extensions: Any) -> None:
        super().__init__(message)
        self.extensions = {"code": CODE, **extensions}


def limits_rule(limits: DocumentLimits, variables: dict[str, Any] | None) -> type[ValidationRule]:
    """A graphql-core validation rule bound to this request's variables (for ``limit: $n``)."""

    class DocumentLimitsRule(ValidationRule):
        def __init__(self, context: ValidationContext) -> None:
            super().__init__(context)
            self.fragments = {f.name.value: f for f in context.document.definitions if f.kind == "fragment_definition"}
            self.schema = context.schema

        def enter_operation_definition(self, node: OperationDefinitionNode, *_):
            root = {"query": self.schema.query_type, "mutation": self.schema.mutation_type,
                    "subscription": self.schema.subscription_type}[node.operation.value]
            self.aliases = self.fields = 0
            try:
                cost = self._cost(node.selection_set, root, depth=1, seen=())
                if cost > limits.max_cost:
                    raise _Refused(
                        f"the document's estimated cost {cost} is over the limit of {limits.max_cost} "
                        "(each list field multiplies what it selects by its limit; RUNLEDGER_GRAPHQL_MAX_COST)",
                        limit="max_cost", value=cost, maximum=limits.max_cost,
                    )
            except _Refused as refused:
                self.report_error(GraphQLError(str(refused), node, extensions=refused.extensions))
            return self.SKIP

        def _cost(self, selection_set, parent_type, depth: int, seen: tuple[str, ...]) -> int:
            if selection_set is None:
                return 0
            if depth > limits.max_depth:
                raise _Refused(f"the document is nested deeper than {limits.max_depth} levels (RUNLEDGER_GRAPHQL_MAX_DEPTH)",
                               limit="max_depth", maximum=limits.max_depth)
            total = 0
            for selection in selection_set.selections:
                if isinstance(selection, FragmentSpreadNode):
                    name = selection.name.value
                    if name in seen or name not in self.fragments:
                        continue
                    fragment = self.fragments[name]
                    target = self.schema.get_type(fragment.type_condition.name.value) or parent_type
                    total += self._cost(fragment.selection_set, target, depth, (*seen, name))
                elif isinstance(selection, InlineFragmentNode):
                    target = self.schema.get_type(selection.type_condition.name.value) if selection.type_condition else parent_type
                    total += self._cost(selection.selection_set, target or parent_type, depth, seen)
                elif isinstance(selection, FieldNode):
                    total += self._field_cost(selection, parent_type, depth, seen)
            return total

        def _field_cost(self, node: FieldNode, parent_type, depth: int, seen) -> int:
            self.fields += 1
            if node.alias is not None:
                self.aliases += 1
            if self.aliases > limits.max_aliases:
                raise _Refused(f"the document uses more than {limits.max_aliases} aliases (RUNLEDGER_GRAPHQL_MAX_ALIASES)",
                               limit="max_aliases", maximum=limits.max_aliases)
            if self.fields > limits.max_fields:
                raise _Refused(f"the document selects more than {limits.max_fields} fields (RUNLEDGER_GRAPHQL_MAX_FIELDS)",
                               limit="max_fields", maximum=limits.max_fields)
            fields = getattr(parent_type, "fields", None) or {}
            definition = fields.get(node.name.value)
            if definition is None:  # __typename and friends
                return 1
            explicit = None
            for argument in node.arguments or ():
                if argument.name.value != "limit":
                    continue
                value = value_from_ast_untyped(argument.value, variables or {})
                if value is None:
                    continue
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise _Refused(f"{node.name.value}: limit must be an integer from 0 to {limits.max_limit}, got {value!r}",
                                   limit="max_limit", field=node.name.value, code="BAD_USER_INPUT")
                if value > limits.max_limit:
                    raise _Refused(f"{node.name.value}: limit {value} is over the maximum of {limits.max_limit} "
                                   "(RUNLEDGER_GRAPHQL_MAX_LIMIT)", limit="max_limit", field=node.name.value, maximum=limits.max_limit)
                explicit = value
            if _is_list(definition.type):
                size = explicit if explicit is not None else limits.default_list_size
            else:
                size = 1
            inner_type = definition.type
            while hasattr(inner_type, "of_type"):
                inner_type = inner_type.of_type
            if not node.selection_set:
                return 1
            return 1 + size * max(self._cost(node.selection_set, inner_type, depth + 1, seen), 1)

    return DocumentLimitsRule
