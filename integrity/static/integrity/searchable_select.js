/* A select with a search box: the admin's vendored select2 on every select.integrity-searchable. */
'use strict';
(function ($) {
    $(function () {
        $('select.integrity-searchable').select2({width: '24em'});
    });
})(django.jQuery);
