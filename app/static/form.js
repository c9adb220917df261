// The job form: show only the selected model's condition fields. A disabled fieldset is not submitted,
// so exactly one model's label / cluster / prompt field goes with the form.
(function () {
  "use strict";
  document.documentElement.classList.add("js");
  var select = document.getElementById("model");
  if (!select) return;
  function update() {
    var fieldsets = document.querySelectorAll("fieldset.condition");
    for (var i = 0; i < fieldsets.length; i++) {
      var on = fieldsets[i].getAttribute("data-model") === select.value;
      fieldsets[i].hidden = !on;
      fieldsets[i].disabled = !on;
    }
  }
  select.addEventListener("change", update);
  update();
  // example prompts: a click fills the model's prompt box (without JavaScript the link reloads the form with it)
  var examples = document.querySelectorAll("a.example-prompt");
  for (var k = 0; k < examples.length; k++) {
    examples[k].addEventListener("click", function (event) {
      var box = document.getElementById(this.getAttribute("data-target"));
      if (!box) return;
      event.preventDefault();
      box.value = this.getAttribute("data-prompt");
      box.focus();
    });
  }
  // example labels and clusters: a click chooses the value in the model's select
  var choices = document.querySelectorAll("a.example-choice");
  for (var c = 0; c < choices.length; c++) {
    choices[c].addEventListener("click", function (event) {
      var field = document.getElementById(this.getAttribute("data-target"));
      if (!field) return;
      event.preventDefault();
      field.value = this.getAttribute("data-value");
      field.focus();
    });
  }
})();
